"""The inference service: OpenVINO models over gRPC (Open Inference Protocol) and on Kafka frame events."""
