"""Everything that writes: the applier (the micro-batch loop), staging, the star schema, the
outbox, the spool, the flush and the warehouse backends. Imports only ``transform``; gets small
frozen configs (``transform.model``), never the program's settings."""
