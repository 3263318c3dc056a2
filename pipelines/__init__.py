"""KFP pipelines of the token-classification package."""
