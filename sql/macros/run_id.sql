{#- The run being built.  The reindex sets WITH_SENSE_RUN_ID (an environment variable, not
    a --vars value: a changed --vars makes dbt re-parse the whole project, ~10 s here, while a
    changed environment variable re-parses only the few files that read it).  By hand:
    `dbt build --vars '{run_id: 20261123T061159228314Z}'` or set WITH_SENSE_RUN_ID. -#}
{% macro run_id() %}
  {{- return(var('run_id', env_var('WITH_SENSE_RUN_ID', ''))) -}}
{% endmacro %}
