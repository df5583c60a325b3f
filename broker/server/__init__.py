"""gRPC servicers and interceptors: thin layers that translate and delegate."""
