"""Example workflows shipped with Interlock: cargo tracking and an order pipeline."""
