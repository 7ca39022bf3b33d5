"""Model building blocks (linear, norm, rotary, activation, embedding, attention)."""
