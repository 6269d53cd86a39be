"""A local Cognito (moto) for `make run` and demos. Needs the `attrgate[local]` extra."""
