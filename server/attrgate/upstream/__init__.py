"""The only place that knows boto3: validated domain requests in, plain outcomes out."""
