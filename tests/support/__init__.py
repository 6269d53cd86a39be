"""Real parts for the tests: a moto Cognito server with signing enforced, a Cognito JSON-protocol
stub for the errors moto cannot produce, and attrgate itself on loopback."""
