"""`opsloop bench`: each processor against a bare confluent-kafka loop and its Faust twin, in one run."""
