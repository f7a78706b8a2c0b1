"""A source's declared fields and schema contract, as the catalog gives them (sluice.sources.Field)."""

import pytest

from sluice import sources
from sluice.errors import InvalidSource


def entry(**extra):
    return {"name": "customers", "kind": "csv", "endpoint": "customers.csv", "mapping": {"source_id": "id"},
            **extra}


def test_a_field_is_a_type_read_from_its_own_name_or_an_object_naming_its_source_field():
    source = sources.from_entry(entry(fields={"email": "text",
                                              "signup": {"type": "timestamp", "from": "signup.at", "required": True}}))
    assert source.fields == {"email": sources.Field("text", "email"),
                             "signup": sources.Field("timestamp", "signup.at", required=True)}
    assert list(source.fields) == ["email", "signup"]  # the catalog's order: the typed view's columns


def test_the_complete_entry_reads_back_to_the_same_source():
    source = sources.from_entry(entry(fields={"seats": "integer"}, schema_contract="freeze"))
    assert sources.from_entry(sources.to_entry(source)) == source


@pytest.mark.parametrize("fields, message", [
    ({"seats": "int"}, "fields.seats: type 'int' is not one of text, integer"),
    ({"Seats": "integer"}, "field name 'Seats' must match"),
    ({"value": "numeric"}, "fields.value: the name is taken by a column every source has"),
    ({"seats": {"type": "integer", "form": "n"}}, "fields.seats: unknown option 'form'"),
    ({"seats": {"type": "integer", "from": " "}}, "fields.seats.from must be a non-empty field name"),
    ({"seats": {"type": "integer", "required": "yes"}}, "fields.seats.required must be true or false"),
    (["seats"], "fields must be an object of field name -> type"),
])
def test_a_bad_declaration_names_the_source_and_the_field(fields, message):
    with pytest.raises(InvalidSource, match="^source 'customers': ") as raised:
        sources.from_entry(entry(fields=fields))
    assert message in str(raised.value)


def test_the_schema_contract_defaults_to_discard_undeclared_and_takes_only_known_names():
    assert sources.from_entry(entry()).schema_contract == "discard_undeclared"
    with pytest.raises(InvalidSource, match="schema_contract 'strict' is not one of evolve, freeze"):
        sources.from_entry(entry(schema_contract="strict"))


def test_fields_may_be_a_list_which_keeps_its_order_through_any_json_store():
    listed = sources.from_entry(entry(fields=[{"name": "seats", "type": "integer"},
                                              {"name": "email", "type": "text", "from": "contact.email"}]))
    assert list(listed.fields) == ["seats", "email"]
    assert listed.fields["email"] == sources.Field("text", "contact.email")
    # the entry XCom carries lists them, so a jsonb XCom store cannot reorder the typed view's columns
    assert [item["name"] for item in sources.to_entry(listed)["fields"]] == ["seats", "email"]
    with pytest.raises(InvalidSource, match="'seats' is declared twice"):
        sources.from_entry(entry(fields=[{"name": "seats", "type": "integer"}, {"name": "seats", "type": "text"}]))
