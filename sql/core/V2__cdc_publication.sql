-- The publication the CDC worker reads (logical replication with pgoutput). Each module's migrations add
-- their own tables to it, so a committed change to any module table becomes a change event however it was
-- made: API, SQL, import.
create publication tessera_cdc;
