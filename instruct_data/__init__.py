"""Instruction data: record sources and files, datasets, collators (packed too), samplers, mixtures, converters,
validation and the data audit."""
