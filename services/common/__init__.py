"""Pieces every service shares: errors, gRPC plumbing, telemetry, metrics, validation,
token counting, protobuf generation."""
