"""The generated protobuf and gRPC modules of Triton's protocol (app/grpc/protos).

They are generated at install time (``make``, or ``python app/grpc/protos/generate.py``) into
``app/grpc/generated``, which git ignores; a checkout where that step did not run gets one line
saying so rather than an ImportError deep in the server's start.
"""

from __future__ import annotations

try:
    from app.grpc.generated import grpc_service_pb2 as pb
    from app.grpc.generated import grpc_service_pb2_grpc as pb_grpc
    from app.grpc.generated import model_config_pb2 as config_pb
except ImportError as exc:  # pragma: no cover - a broken install
    raise ImportError(
        "the gRPC modules are not generated: run `make` (or `pip install grpcio-tools && python "
        f"app/grpc/protos/generate.py`) in the checkout ({exc})"
    ) from exc

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name  # inference.GRPCInferenceService

__all__ = ["SERVICE", "config_pb", "pb", "pb_grpc"]
