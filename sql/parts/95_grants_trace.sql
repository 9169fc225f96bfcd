
/* sql/parts/95_grants_trace.sql */
GRANT SELECT ON asyncjobs.plugintracelog TO PUBLIC;
GRANT EXECUTE ON FUNCTION asyncjobs.trace(text) TO PUBLIC;
