//! Every route a node serves: the dashboard's pages and assets, and under
//! `/api/v1` the API's routes and the dashboard's JSON.

use actix_web::web;

pub fn routes(cfg: &mut web::ServiceConfig) {
    crate::dashboard::routes(cfg);
    cfg.service(crate::api::api_routes(crate::dashboard::api_routes(web::scope(backmesh_api::PREFIX))))
        .default_service(web::to(crate::api::not_found));
}
