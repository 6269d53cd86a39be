"""The Cognito quota governor: shares the account's UserUpdate quota (kind CognitoQuota) fairly
among callers and replicas, paces writes per user, adapts when Cognito throttles anyway, and
bounds the calls under way per class of callers. docs/quota.md explains the model."""
