"""Pure code, importing only itself: the model types, errors and their classification tables, the
batching policy, schema and value conversion, the row decoder, net changes, the star schema's
shape, rules and SQL, the schema-change planner, fingerprints."""
