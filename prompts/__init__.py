"""Versioned caption prompts: each `<prompt_id>.txt` here is one released prompt (never edited)."""
