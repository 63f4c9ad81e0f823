"""Networks, fine-tuning and the classical classifier zoo."""
