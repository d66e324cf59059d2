"""The conversation format: records, templates, tokenization with label spans, image loading."""
