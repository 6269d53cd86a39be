"""attrgate: a policy-enforcing gRPC proxy in front of Cognito's AdminUpdateUserAttributes."""

__version__ = "0.1.0"
