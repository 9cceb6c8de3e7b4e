"""Testing aids, not product: random-weight Zero123++ models of the real architecture and folder layout, for tests
(tiny) and GPU speed work (full size, which costs exactly what the real weights cost)."""
