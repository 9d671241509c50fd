"""Pieces every service shares: config loading, errors, gRPC plumbing, protobuf generation."""
