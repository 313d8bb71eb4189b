//! REST v1 tags: list/find, create, apply.

use crate::support::*;
use serde_json::json;

#[tokio::test]
async fn list_find_create_and_apply_tags() {
    let (sandbox, client) = start().await;
    let token = grant(&sandbox).access_token;
    let vip = sandbox.add_tag(APP, "vip");
    assert_eq!(sandbox.add_tag(APP, "vip"), vip);
    sandbox.add_tag(APP, "vip customers");
    sandbox.add_tag("otherapp", "vip");

    let list = |query: Vec<(&'static str, String)>| {
        let request = client
            .get(with_query(&api(&sandbox, "/tags"), &query))
            .bearer_auth(&token);
        async move { json(request.send().await.unwrap()).await }
    };
    let found = list(vec![("name", "vip".into())]).await;
    assert_eq!(found["count"], 1, "name is a full-string match");
    assert_eq!(
        found["tags"][0],
        json!({"id": vip, "name": "vip", "description": null, "category": null})
    );
    assert_eq!(list(vec![("name", "vi".into())]).await["count"], 0);
    assert_eq!(list(vec![]).await["count"], 2);
    let page = list(vec![("limit", "1".into()), ("offset", "1".into())]).await;
    assert_eq!(page["tags"].as_array().unwrap().len(), 1);
    assert_eq!(page["tags"][0]["name"], "vip customers");
    assert_eq!(page["count"], 2);

    let create = |body: serde_json::Value| {
        client
            .post(api(&sandbox, "/tags"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let created = create(json!({"name": "buttonpushed", "description": "pushed it"}))
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created = json(created).await;
    let pushed = created["id"].as_i64().unwrap();
    assert_eq!(created["name"], "buttonpushed");
    assert_eq!(created["description"], "pushed it");
    assert_eq!(
        create(json!({"name": "buttonpushed"}))
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(create(json!({"title": "x"})).await.unwrap().status(), 400);
    assert_eq!(create(json!({"name": 5})).await.unwrap().status(), 400);
    assert!(
        sandbox
            .tags(APP)
            .contains(&(pushed, "buttonpushed".to_owned()))
    );

    let contact = json(
        put_contact(
            &sandbox,
            &client,
            &token,
            &json!({"email_addresses": [{"email": "ada@example.com", "field": "EMAIL1"}]}),
        )
        .await,
    )
    .await;
    let id = contact["id"].as_i64().unwrap();
    let apply = |contact_id: i64, body: serde_json::Value| {
        client
            .post(api(&sandbox, &format!("/contacts/{contact_id}/tags")))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let applied = apply(id, json!({"tagIds": [vip, pushed]})).await.unwrap();
    assert_eq!(applied.status(), 200);
    assert_eq!(
        json(applied).await,
        json!({vip.to_string(): "SUCCESS", pushed.to_string(): "SUCCESS"})
    );
    let stored = &sandbox.contacts(APP)[0];
    assert_eq!(stored["tag_ids"], json!([vip, pushed]));
    assert!(stored["last_updated"].as_str() > contact["last_updated"].as_str());

    // Keap answers 200 whatever happened, one outcome per id.
    let restricted = sandbox.add_tag(APP, "restricted");
    sandbox.set_tag_apply_outcome(APP, restricted, Some("NO_PERMISSION"));
    let mixed = apply(id, json!({"tagIds": [vip, 999_999, restricted]}))
        .await
        .unwrap();
    assert_eq!(mixed.status(), 200);
    assert_eq!(
        json(mixed).await,
        json!({vip.to_string(): "DUPLICATE", "999999": "TAG_ID_NOT_FOUND",
               restricted.to_string(): "NO_PERMISSION"})
    );
    assert_eq!(sandbox.contacts(APP)[0]["tag_ids"], json!([vip, pushed]));
    let missing_contact = apply(id + 100, json!({"tagIds": [vip]})).await.unwrap();
    assert_eq!(missing_contact.status(), 200);
    assert_eq!(
        json(missing_contact).await,
        json!({vip.to_string(): "CONTACT_NOT_FOUND"})
    );

    // Found by id until deleted; deleting takes it off contacts.
    let by_id = |tag: i64| {
        client
            .get(api(&sandbox, &format!("/tags/{tag}")))
            .bearer_auth(&token)
            .send()
    };
    assert_eq!(json(by_id(vip).await.unwrap()).await["name"], "vip");
    sandbox.delete_tag(APP, vip);
    assert_eq!(by_id(vip).await.unwrap().status(), 404);
    assert_eq!(sandbox.contacts(APP)[0]["tag_ids"], json!([pushed]));
    assert_eq!(
        json(apply(id, json!({"tagIds": [vip]})).await.unwrap()).await,
        json!({vip.to_string(): "TAG_ID_NOT_FOUND"})
    );
    assert_eq!(
        apply(id, json!({"tag_ids": [vip]})).await.unwrap().status(),
        400
    );
    assert_eq!(
        apply(id, json!({"tagIds": []})).await.unwrap().status(),
        400
    );
    let too_many: Vec<i64> = (0..101).map(|_| vip).collect();
    let response = apply(id, json!({"tagIds": too_many})).await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        json(response).await["message"],
        "A maximum of 100 tag ids can be added at once"
    );
}
