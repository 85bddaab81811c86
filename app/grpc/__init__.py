"""The gRPC front end: Triton's ``inference.GRPCInferenceService`` (a superset of the KServe v2
gRPC protocol), ``grpc.health.v1`` and reflection, on the same engine as REST."""
