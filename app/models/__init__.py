"""Model families: how each is recognised from a state dict, built, and described to the service."""
