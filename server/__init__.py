"""The gRPC service: a thin transport over ``evaluator`` (see README, "The service")."""
