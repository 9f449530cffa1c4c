{#- The model has exactly the keys `columns` of another relation: none missing, none extra.
    (For example: every caption has a verdict of this run.) -#}
{% test same_keys(model, to, columns) %}
(select {{ columns | join(', ') }} from {{ model }} except select {{ columns | join(', ') }} from {{ to }})
union all
(select {{ columns | join(', ') }} from {{ to }} except select {{ columns | join(', ') }} from {{ model }})
{% endtest %}
