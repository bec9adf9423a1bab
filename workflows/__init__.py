"""Example workflows shipped with Interlock: cargo tracking, an order pipeline, and an order
composed of an invoicing child run and a cargo run per parcel."""
