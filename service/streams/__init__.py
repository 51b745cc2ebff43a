"""Live event streams at the gateway: decode pushed bytes, window them, relay windows to a worker."""
