"""The dashboard of `meshctl up` (http://127.0.0.1:9900): topology, RED metrics, breakers,
event streams, sagas and traces of the running mesh, server-rendered."""
