"""Model card templates (Jinja, rendered by `huggingface_hub.ModelCard`), shipped inside the package as
`mmsr_peft.model_cards` and read with `importlib.resources`."""
