"""Instruction data: records, templates, exact label masks, datasets, collators, samplers, mixtures, converters, the synthetic world."""
