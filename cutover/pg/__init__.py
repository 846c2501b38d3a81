"""Everything cutover says to PostgreSQL; the only package that imports psycopg.

Connections set `application_name='cutover'`; names go through
`psycopg.sql.Identifier`, values are parameters, and statements longer than a
few lines live in `queries/*.sql`.
"""
