//! PostgreSQL client side of the wire and replication protocols.
