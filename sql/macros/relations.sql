{#- Relations render without the database (catalog) name.  dbt-duckdb names the catalog
    after the file, and a run builds a copy under another name before publishing it as
    with_sense.duckdb: a view holding "<copy>"."main"."runs" would break once published
    (or when an analyst opens a renamed copy).  Schema-qualified names work in both. -#}
{% macro ref() %}
  {{ return(builtins.ref(*varargs, **kwargs).include(database=False)) }}
{% endmacro %}

{% macro source(source_name, table_name) %}
  {{ return(builtins.source(source_name, table_name).include(database=False)) }}
{% endmacro %}
