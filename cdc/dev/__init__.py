"""Development tools, not the daemon: private MariaDB/PostgreSQL servers from the system
binaries (localservers), SoftCart-shaped seed data (seed), and the two-command demo (demo)."""
