"""The capture side: the binlog read into whole source transactions (source, feed, assemble,
binlog_fixes), the initial snapshot (snapshot, extract), the source's connections and catalog
(mysql, flavor) and where to resume on it (positions)."""
