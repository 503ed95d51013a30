"""`aigcctl`: the admin command line of AIGC Gateway, over the services' gRPC contracts."""
