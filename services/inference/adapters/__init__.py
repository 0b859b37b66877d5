"""Transport adapters around the serving core: gRPC (Open Inference Protocol) and Kafka."""
