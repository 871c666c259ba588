"""Runtime: starting or joining Ray the same way everywhere, the CPU shares of light tasks, and storage that may
be a local path or an object-store URI."""
