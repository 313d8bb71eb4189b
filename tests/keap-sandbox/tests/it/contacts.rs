//! REST v1: authentication, contact upsert, custom fields, tenants.

use crate::support::*;
use serde_json::{Value, json};

const SHAPE_ERROR: &str = r#"{"message":"Input could not be converted to a valid request"}"#;

#[tokio::test]
async fn profile_accepts_bearer_tokens_and_service_account_keys() {
    let (sandbox, client) = start().await;
    let pair = grant(&sandbox);
    let profile = json(
        client
            .get(api(&sandbox, "/account/profile"))
            .bearer_auth(&pair.access_token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(profile["email"], "owner@sandbox01.example");
    assert!(profile["name"].is_string() && profile["website"].is_string());

    let key = sandbox.issue_service_account_key("keyapp");
    assert!(key.starts_with("KeapAK-"));
    let with_key = |key: String| {
        client
            .get(api(&sandbox, "/account/profile"))
            .header("X-Keap-API-Key", key)
            .send()
    };
    let response = with_key(key.clone()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(json(response).await["email"], "owner@keyapp.example");

    sandbox.revoke_service_account_key(&key);
    let response = with_key(key.clone()).await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        json(response).await,
        json!({"fault": {"faultstring": "Invalid ApiKey", "detail": {"errorcode": "oauth.v2.InvalidApiKey"}}})
    );
    assert_eq!(
        with_key("KeapAK-unknown".into()).await.unwrap().status(),
        401
    );

    // No credentials, an unknown token, a token in the query string, Basic: all refused.
    let anonymous = client
        .get(api(&sandbox, "/account/profile"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(
        json(anonymous).await["fault"]["detail"]["errorcode"],
        "keymanagement.service.invalid_access_token"
    );
    assert_eq!(profile_status(&sandbox, &client, "made-up").await, 401);
    let in_query = client
        .get(with_query(
            &api(&sandbox, "/account/profile"),
            &[("access_token", pair.access_token.as_str())],
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(in_query.status(), 401);

    let log = sandbox.requests();
    assert_eq!(log.len(), 7);
    assert_eq!(
        log.iter()
            .filter(|r| r.auth == keap_sandbox::AuthKind::ApiKey)
            .count(),
        3
    );
    assert_eq!(log[1].app.as_deref(), Some("keyapp"));
}

#[tokio::test]
async fn upsert_creates_then_updates_the_same_contact_by_email() {
    let (sandbox, client) = start().await;
    let pair = grant(&sandbox);
    let create = put_contact(
        &sandbox,
        &client,
        &pair.access_token,
        &json!({
            "duplicate_option": "Email",
            "given_name": "Ada",
            "family_name": "Byron",
            "email_addresses": [{"email": "ada@example.com", "field": "EMAIL1"}],
            "phone_numbers": [{"number": "+44 20 7946 0000", "field": "PHONE1"}],
            "opt_in_reason": "Signed up",
            "source_type": "API",
        }),
    )
    .await;
    assert_eq!(create.status(), 201);
    let created = json(create).await;
    let id = created["id"].as_i64().expect("integer id");
    assert_eq!(created["date_created"], created["last_updated"]);
    assert_eq!(created["tag_ids"], json!([]));
    assert_eq!(created["custom_fields"], json!([]));
    assert!(created["date_created"].as_str().unwrap().ends_with('Z'));

    let update = put_contact(
        &sandbox,
        &client,
        &pair.access_token,
        &json!({
            "duplicate_option": "Email",
            "family_name": "Lovelace",
            "email_addresses": [{"email": "ADA@Example.com", "field": "EMAIL1"}],
        }),
    )
    .await;
    assert_eq!(update.status(), 200);
    let updated = json(update).await;
    assert_eq!(updated["id"], id);
    assert_eq!(updated["given_name"], "Ada", "unchanged values are kept");
    assert_eq!(updated["family_name"], "Lovelace");
    assert_eq!(updated["phone_numbers"][0]["number"], "+44 20 7946 0000");
    assert_eq!(updated["opt_in_reason"], "Signed up");
    assert_eq!(updated["date_created"], created["date_created"]);
    assert!(
        updated["last_updated"].as_str().unwrap() > created["last_updated"].as_str().unwrap(),
        "last_updated moves forward even within one millisecond"
    );

    let stored = sandbox.contacts(APP);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0], updated);

    let fetched = client
        .get(api(&sandbox, &format!("/contacts/{id}")))
        .bearer_auth(&pair.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), 200);
    assert_eq!(json(fetched).await["family_name"], "Lovelace");
}

#[tokio::test]
async fn duplicate_options_decide_what_counts_as_the_same_contact() {
    let (sandbox, client) = start().await;
    let token = grant(&sandbox).access_token;
    let body = |option: Option<&str>, given: &str| {
        let mut body = json!({
            "given_name": given,
            "family_name": "Lovelace",
            "email_addresses": [{"email": "ada@example.com", "field": "EMAIL1"}],
        });
        if let Some(option) = option {
            body["duplicate_option"] = json!(option);
        }
        body
    };
    let status = |response: reqwest::Response| -> u16 { response.status().as_u16() };
    assert_eq!(
        status(
            put_contact(
                &sandbox,
                &client,
                &token,
                &body(Some("EmailAndName"), "Ada")
            )
            .await
        ),
        201
    );
    assert_eq!(
        status(
            put_contact(
                &sandbox,
                &client,
                &token,
                &body(Some("EmailAndName"), "ada")
            )
            .await
        ),
        200
    );
    assert_eq!(
        status(
            put_contact(
                &sandbox,
                &client,
                &token,
                &body(Some("EmailAndName"), "Augusta")
            )
            .await
        ),
        201
    );
    // Without duplicate_option every request creates.
    assert_eq!(
        status(put_contact(&sandbox, &client, &token, &body(None, "Ada")).await),
        201
    );
    assert_eq!(sandbox.contacts(APP).len(), 3);
    // Email matching picks the oldest contact with that EMAIL1.
    let response = put_contact(&sandbox, &client, &token, &body(Some("Email"), "Ada")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(json(response).await["id"], sandbox.contacts(APP)[0]["id"]);
    let ids: Vec<i64> = sandbox
        .contacts(APP)
        .iter()
        .map(|c| c["id"].as_i64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
}

#[tokio::test]
async fn shape_errors_get_keaps_exact_message() {
    let (sandbox, client) = start().await;
    let token = grant(&sandbox).access_token;
    let color = sandbox.add_custom_field(APP, "Favorite Color", "Text");
    let cases = [
        json!([{"email": "ada@example.com"}]),
        json!({"email": "ada@example.com"}),
        json!({"email_addresses": ["ada@example.com"]}),
        json!({"email_addresses": {"email": "ada@example.com", "field": "EMAIL1"}}),
        json!({"email_addresses": [{"email": "ada@example.com"}]}),
        json!({"email_addresses": [{"email": "ada@example.com", "field": "PRIMARY"}]}),
        json!({"email_addresses": [{"address": "ada@example.com", "field": "EMAIL1"}]}),
        json!({"phone_numbers": [{"number": "555", "field": "MOBILE"}]}),
        json!({"phone_numbers": ["555"]}),
        json!({"custom_fields": {"Favorite Color": "blue"}}),
        json!({"custom_fields": [{"id": color.to_string(), "content": "blue"}]}),
        json!({"custom_fields": [{"label": "Favorite Color", "content": "blue"}]}),
        json!({"duplicate_option": "email", "email_addresses": [{"email": "ada@example.com", "field": "EMAIL1"}]}),
        json!({"duplicate_option": "Phone", "email_addresses": [{"email": "ada@example.com", "field": "EMAIL1"}]}),
        json!({"company": "Analytical Engines", "email_addresses": [{"email": "ada@example.com", "field": "EMAIL1"}]}),
        json!({"givenName": "Ada", "email_addresses": [{"email": "ada@example.com", "field": "EMAIL1"}]}),
        json!({"email": "ada@example.com", "email_addresses": [{"email": "ada@example.com", "field": "EMAIL1"}]}),
        json!({"given_name": ["Ada"], "email_addresses": [{"email": "ada@example.com", "field": "EMAIL1"}]}),
    ];
    for body in &cases {
        let response = put_contact(&sandbox, &client, &token, body).await;
        assert_eq!(response.status(), 400, "{body}");
        assert_eq!(response.text().await.unwrap(), SHAPE_ERROR, "{body}");
    }
    let not_json = client
        .put(api(&sandbox, "/contacts"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{\"given_name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
    assert_eq!(not_json.text().await.unwrap(), SHAPE_ERROR);
    let form = client
        .put(api(&sandbox, "/contacts"))
        .bearer_auth(&token)
        .form(&[("given_name", "Ada")])
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 415);
    assert!(sandbox.contacts(APP).is_empty(), "nothing was stored");
}

#[tokio::test]
async fn semantic_errors_get_a_specific_message() {
    let (sandbox, client) = start().await;
    let token = grant(&sandbox).access_token;
    let email = json!([{"email": "ada@example.com", "field": "EMAIL1"}]);
    let cases = [
        json!({"given_name": "Ada"}),
        json!({"given_name": "x".repeat(256), "email_addresses": email}),
        json!({"family_name": "x".repeat(256), "email_addresses": email}),
        json!({"email_addresses": [{"email": "not an email", "field": "EMAIL1"}]}),
        json!({"email_addresses": [{"email": "a@example.com", "field": "EMAIL1"},
                                   {"email": "b@example.com", "field": "EMAIL1"}]}),
        json!({"email_addresses": email, "custom_fields": [{"id": 999, "content": "x"}]}),
    ];
    for body in &cases {
        let response = put_contact(&sandbox, &client, &token, body).await;
        assert_eq!(response.status(), 400, "{body}");
        let message = json(response).await["message"].as_str().unwrap().to_owned();
        assert_ne!(
            message, "Input could not be converted to a valid request",
            "{body}"
        );
        assert!(!message.is_empty());
    }
    assert!(sandbox.contacts(APP).is_empty());
    // 255 characters is still fine.
    let response = put_contact(
        &sandbox,
        &client,
        &token,
        &json!({"given_name": "x".repeat(255), "email_addresses": email}),
    )
    .await;
    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn custom_fields_by_id_and_the_contact_model() {
    let (sandbox, client) = start().await;
    let token = grant(&sandbox).access_token;
    let color = sandbox.add_custom_field(APP, "Favorite Color", "Text");
    let score = sandbox.add_custom_field(APP, "Score", "WholeNumber");
    assert_ne!(color, score);
    assert_eq!(
        sandbox.add_custom_field(APP, "Favorite Color", "Text"),
        color
    );
    // Ids are per tenant: otherapp's third field has an id that this app does not have.
    sandbox.add_custom_field("otherapp", "A", "Text");
    sandbox.add_custom_field("otherapp", "B", "Text");
    let other_app_field = sandbox.add_custom_field("otherapp", "Only There", "Text");
    assert!(other_app_field != color && other_app_field != score);

    let model = json(
        client
            .get(api(&sandbox, "/contacts/model"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let fields = model["custom_fields"].as_array().unwrap();
    assert_eq!(fields.len(), 2);
    assert_eq!(fields[0]["id"], color);
    assert_eq!(fields[0]["label"], "Favorite Color");
    assert_eq!(fields[0]["field_type"], "Text");
    assert!(fields[0]["options"].is_array());
    assert!(
        model["optional_properties"]
            .as_array()
            .unwrap()
            .contains(&json!("custom_fields"))
    );

    let response = put_contact(
        &sandbox,
        &client,
        &token,
        &json!({"email_addresses": [{"email": "ada@example.com", "field": "EMAIL1"}],
                "custom_fields": [{"id": other_app_field, "content": "x"}]}),
    )
    .await;
    assert_eq!(
        response.status(),
        400,
        "another tenant's field id is unknown here"
    );

    let response = put_contact(
        &sandbox,
        &client,
        &token,
        &json!({"duplicate_option": "Email",
                "email_addresses": [{"email": "ada@example.com", "field": "EMAIL1"}],
                "custom_fields": [{"id": color, "content": "blue"}, {"id": score, "content": 7}]}),
    )
    .await;
    assert_eq!(response.status(), 201);
    let id = json(response).await["id"].as_i64().unwrap();
    let response = put_contact(
        &sandbox,
        &client,
        &token,
        &json!({"duplicate_option": "Email",
                "email_addresses": [{"email": "ada@example.com", "field": "EMAIL1"}],
                "custom_fields": [{"id": color, "content": "green"}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        json(response).await["custom_fields"],
        json!([{"id": color, "content": "green"}, {"id": score, "content": 7}])
    );

    let get = |query: &'static str| {
        client
            .get(api(&sandbox, &format!("/contacts/{id}{query}")))
            .bearer_auth(&token)
            .send()
    };
    let plain = json(get("").await.unwrap()).await;
    assert!(
        plain.get("custom_fields").is_none(),
        "Keap omits them unless asked"
    );
    let with_fields = json(
        get("?optional_properties=custom_fields,job_title")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(with_fields["custom_fields"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn tenants_are_isolated_and_unknown_contacts_are_404() {
    let (sandbox, client) = start().await;
    let mine = grant(&sandbox).access_token;
    let theirs = sandbox.issue_grant(CLIENT_ID, "otherapp").access_token;
    let response = put_contact(
        &sandbox,
        &client,
        &mine,
        &json!({"email_addresses": [{"email": "ada@example.com", "field": "EMAIL1"}]}),
    )
    .await;
    let id = json(response).await["id"].as_i64().unwrap();
    let status = |token: String, path: String| {
        let request = client.get(api(&sandbox, &path)).bearer_auth(token);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(mine.clone(), format!("/contacts/{id}")).await, 200);
    assert_eq!(status(theirs.clone(), format!("/contacts/{id}")).await, 404);
    assert_eq!(status(mine.clone(), "/contacts/424242".into()).await, 404);
    assert_eq!(status(mine.clone(), "/no/such/resource".into()).await, 404);
    assert_eq!(
        status("bogus".into(), "/no/such/resource".into()).await,
        401
    );
    assert!(sandbox.contacts("otherapp").is_empty());
    let found: Value = json(
        client
            .get(with_query(
                &api(&sandbox, "/contacts"),
                &[("email", "ADA@example.com")],
            ))
            .bearer_auth(&mine)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(found["count"], 1);
    assert_eq!(found["contacts"][0]["id"], id);
}
