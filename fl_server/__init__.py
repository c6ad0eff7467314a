"""The server side of fedintent: the ServerApp, strategy, run record and model store."""
