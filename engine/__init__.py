"""Everything about the model: documents, tokens and separators, cache policies, backends, memories."""
