"""Simulated attacks: colluding adversaries, crafted replies, poisoned data (simulations only)."""
