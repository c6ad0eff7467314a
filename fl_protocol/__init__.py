"""What a site and the server agree on: the wire contract and the file primitives both use."""
