"""Running federations on Ray; scenario files (fedrank.simulations)."""
