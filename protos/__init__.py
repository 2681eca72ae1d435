"""Wire schemas of client updates, codecs and validation (fedrank.protos)."""
