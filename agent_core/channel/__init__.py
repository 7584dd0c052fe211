"""The secure channel: Noise XX / XXpsk3 over 25519, AES-GCM and SHA-256, sans-I/O."""
