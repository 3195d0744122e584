"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import imaging_sync.db.types

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('entity_link',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('partner', sa.String(length=63), nullable=False),
    sa.Column('entity_type', sa.String(length=16), nullable=False),
    sa.Column('entity_id', sa.Uuid(), nullable=False),
    sa.Column('partner_entity_id', sa.String(length=128), nullable=False),
    sa.Column('partner_study_id', sa.String(length=128), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('attrs', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_at', imaging_sync.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', imaging_sync.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_entity_link')),
    sa.UniqueConstraint('partner', 'entity_type', 'entity_id', 'partner_study_id', name=op.f('uq_entity_link_partner_entity_type_entity_id_partner_study_id'))
    )
    with op.batch_alter_table('entity_link', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_entity_link_entity_type_entity_id'), ['entity_type', 'entity_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_entity_link_partner_entity_type_partner_entity_id'), ['partner', 'entity_type', 'partner_entity_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_entity_link_partner_partner_study_id'), ['partner', 'partner_study_id'], unique=False)

    op.create_table('partner_state',
    sa.Column('partner', sa.String(length=63), nullable=False),
    sa.Column('bookmark', imaging_sync.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_run_id', sa.Uuid(), nullable=True),
    sa.Column('last_success_at', imaging_sync.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('updated_at', imaging_sync.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('partner', name=op.f('pk_partner_state'))
    )
    op.create_table('subject',
    sa.Column('issuer', sa.String(length=64), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('patient_name', sa.String(length=200), nullable=True),
    sa.Column('patient_name_search', sa.String(length=200), nullable=True),
    sa.Column('birth_date', sa.Date(), nullable=True),
    sa.Column('sex', sa.String(length=16), nullable=True),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('source_partner', sa.String(length=63), nullable=False),
    sa.Column('source_priority', sa.Integer(), nullable=False),
    sa.Column('created_at', imaging_sync.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', imaging_sync.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('deleted_at', imaging_sync.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_subject')),
    sa.UniqueConstraint('issuer', 'patient_id', name=op.f('uq_subject_issuer_patient_id'))
    )
    with op.batch_alter_table('subject', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_subject_patient_id'), ['patient_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_subject_patient_name_search'), ['patient_name_search'], unique=False)

    op.create_table('sync_run',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('partner', sa.String(length=63), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('trigger', sa.String(length=16), nullable=False),
    sa.Column('full', sa.Boolean(), nullable=False),
    sa.Column('started_at', imaging_sync.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', imaging_sync.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('since', imaging_sync.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('pages', sa.Integer(), nullable=False),
    sa.Column('fetched', sa.Integer(), nullable=False),
    sa.Column('created', sa.Integer(), nullable=False),
    sa.Column('updated', sa.Integer(), nullable=False),
    sa.Column('unchanged', sa.Integer(), nullable=False),
    sa.Column('deleted', sa.Integer(), nullable=False),
    sa.Column('rejected', sa.Integer(), nullable=False),
    sa.Column('instances', sa.BigInteger(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('error_kind', sa.String(length=32), nullable=True),
    sa.Column('host', sa.String(length=255), nullable=True),
    sa.Column('pid', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sync_run'))
    )
    with op.batch_alter_table('sync_run', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sync_run_partner_started_at'), ['partner', 'started_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_sync_run_status'), ['status'], unique=False)

    op.create_table('rejected_item',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('run_id', sa.Uuid(), nullable=False),
    sa.Column('partner', sa.String(length=63), nullable=False),
    sa.Column('partner_item_id', sa.String(length=128), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('created_at', imaging_sync.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['sync_run.id'], name=op.f('fk_rejected_item_run_id_sync_run')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rejected_item'))
    )
    with op.batch_alter_table('rejected_item', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rejected_item_partner_created_at'), ['partner', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_rejected_item_run_id'), ['run_id'], unique=False)

    op.create_table('study',
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('subject_id', sa.Uuid(), nullable=False),
    sa.Column('accession_number', sa.String(length=16), nullable=True),
    sa.Column('study_date', sa.Date(), nullable=True),
    sa.Column('study_time', sa.String(length=16), nullable=True),
    sa.Column('description', sa.String(length=64), nullable=True),
    sa.Column('referring_physician_name', sa.String(length=200), nullable=True),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('source_partner', sa.String(length=63), nullable=False),
    sa.Column('source_priority', sa.Integer(), nullable=False),
    sa.Column('created_at', imaging_sync.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', imaging_sync.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('deleted_at', imaging_sync.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['subject_id'], ['subject.id'], name=op.f('fk_study_subject_id_subject')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_study')),
    sa.UniqueConstraint('study_instance_uid', name=op.f('uq_study_study_instance_uid'))
    )
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_study_accession_number'), ['accession_number'], unique=False)
        batch_op.create_index(batch_op.f('ix_study_study_date'), ['study_date'], unique=False)
        batch_op.create_index(batch_op.f('ix_study_subject_id'), ['subject_id'], unique=False)

    op.create_table('series',
    sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('study_id', sa.Uuid(), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=False),
    sa.Column('series_number', sa.Integer(), nullable=True),
    sa.Column('description', sa.String(length=64), nullable=True),
    sa.Column('body_part_examined', sa.String(length=16), nullable=True),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('source_partner', sa.String(length=63), nullable=False),
    sa.Column('source_priority', sa.Integer(), nullable=False),
    sa.Column('created_at', imaging_sync.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', imaging_sync.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('deleted_at', imaging_sync.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['study_id'], ['study.id'], name=op.f('fk_series_study_id_study')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_series')),
    sa.UniqueConstraint('series_instance_uid', name=op.f('uq_series_series_instance_uid'))
    )
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_series_modality'), ['modality'], unique=False)
        batch_op.create_index(batch_op.f('ix_series_study_id'), ['study_id'], unique=False)

    op.create_table('instance',
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('series_id', sa.Uuid(), nullable=False),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=False),
    sa.Column('transfer_syntax_uid', sa.String(length=64), nullable=True),
    sa.Column('instance_number', sa.Integer(), nullable=True),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('source_partner', sa.String(length=63), nullable=False),
    sa.Column('source_priority', sa.Integer(), nullable=False),
    sa.Column('created_at', imaging_sync.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', imaging_sync.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('deleted_at', imaging_sync.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['series_id'], ['series.id'], name=op.f('fk_instance_series_id_series')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_instance')),
    sa.UniqueConstraint('sop_instance_uid', name=op.f('uq_instance_sop_instance_uid'))
    )
    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_instance_series_id'), ['series_id'], unique=False)

    op.create_table('instance_location',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('instance_id', sa.Uuid(), nullable=False),
    sa.Column('partner', sa.String(length=63), nullable=False),
    sa.Column('bucket', sa.String(length=63), nullable=False),
    sa.Column('key', sa.String(length=1024), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=True),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('created_at', imaging_sync.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', imaging_sync.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['instance_id'], ['instance.id'], name=op.f('fk_instance_location_instance_id_instance')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_instance_location')),
    sa.UniqueConstraint('instance_id', 'partner', name=op.f('uq_instance_location_instance_id_partner'))
    )
    with op.batch_alter_table('instance_location', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_instance_location_partner_bucket'), ['partner', 'bucket'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('instance_location', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_instance_location_partner_bucket'))

    op.drop_table('instance_location')
    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_instance_series_id'))

    op.drop_table('instance')
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_series_study_id'))
        batch_op.drop_index(batch_op.f('ix_series_modality'))

    op.drop_table('series')
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_study_subject_id'))
        batch_op.drop_index(batch_op.f('ix_study_study_date'))
        batch_op.drop_index(batch_op.f('ix_study_accession_number'))

    op.drop_table('study')
    with op.batch_alter_table('rejected_item', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rejected_item_run_id'))
        batch_op.drop_index(batch_op.f('ix_rejected_item_partner_created_at'))

    op.drop_table('rejected_item')
    with op.batch_alter_table('sync_run', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sync_run_status'))
        batch_op.drop_index(batch_op.f('ix_sync_run_partner_started_at'))

    op.drop_table('sync_run')
    with op.batch_alter_table('subject', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_subject_patient_name_search'))
        batch_op.drop_index(batch_op.f('ix_subject_patient_id'))

    op.drop_table('subject')
    op.drop_table('partner_state')
    with op.batch_alter_table('entity_link', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_entity_link_partner_partner_study_id'))
        batch_op.drop_index(batch_op.f('ix_entity_link_partner_entity_type_partner_entity_id'))
        batch_op.drop_index(batch_op.f('ix_entity_link_entity_type_entity_id'))

    op.drop_table('entity_link')
