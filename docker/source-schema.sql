-- The source database of docker/compose.yaml: tenancies, and users and contact channels keyed
-- by their tenancy (the same shape as `pgfanout demo`). The tenant key is part of each primary
-- key, so the default replica identity carries it. Run once by the postgres image on first start.
CREATE TABLE tenancy (id uuid PRIMARY KEY, project_id text NOT NULL UNIQUE);
CREATE TABLE users (
    tenancy_id uuid NOT NULL REFERENCES tenancy (id),
    id bigint GENERATED ALWAYS AS IDENTITY,
    email text NOT NULL,
    display_name text,
    is_anonymous boolean NOT NULL DEFAULT false,
    PRIMARY KEY (tenancy_id, id)
);
CREATE TABLE contact_channels (
    tenancy_id uuid NOT NULL,
    id bigint GENERATED ALWAYS AS IDENTITY,
    user_id bigint NOT NULL,
    kind text NOT NULL,
    value text NOT NULL,
    is_verified boolean NOT NULL DEFAULT false,
    PRIMARY KEY (tenancy_id, id),
    FOREIGN KEY (tenancy_id, user_id) REFERENCES users (tenancy_id, id) ON DELETE CASCADE
);
INSERT INTO tenancy VALUES
    ('00000000-0000-0000-0000-00000000000a', 'acme'),
    ('00000000-0000-0000-0000-00000000000b', 'globex'),
    ('00000000-0000-0000-0000-00000000000c', 'initech');
