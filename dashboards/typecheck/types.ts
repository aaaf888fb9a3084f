// The types every dashboard JSON under dashboards/ must satisfy.
//
// `Json<Dashboard>` is @grafana/schema's Dashboard type as it looks in a JSON file: enums become
// the union of their values (JSON holds "palette-classic", not FieldColorModeId.PaletteClassic).
// `PrometheusDashboard` and `InfluxDashboard` narrow it: each panel's options and custom field
// config must match that panel plugin's own types from @grafana/schema, and each query the data
// source's query model. Object literals are checked for excess properties, so a misspelt key is
// an error, not a setting Grafana silently ignores.

import type {
  Dashboard,
  DataSourceRef,
  FieldConfig,
  FieldConfigSource,
  Panel,
  RowPanel,
} from '@grafana/schema';
import type * as barGauge from '@grafana/schema/dist/esm/raw/composable/bargauge/panelcfg/x/BarGaugePanelCfg_types.gen';
import type * as stat from '@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen';
import type * as stateTimeline from '@grafana/schema/dist/esm/raw/composable/statetimeline/panelcfg/x/StateTimelinePanelCfg_types.gen';
import type * as table from '@grafana/schema/dist/esm/raw/composable/table/panelcfg/x/TablePanelCfg_types.gen';
import type * as text from '@grafana/schema/dist/esm/raw/composable/text/panelcfg/x/TextPanelCfg_types.gen';
import type * as timeSeries from '@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';

/** A type as stored in JSON: string enums become their values, recursively. */
export type Json<T> = T extends string
  ? string extends T
    ? string
    : `${T}`
  : T extends number | boolean | null | undefined
    ? T
    : T extends ReadonlyArray<infer U>
      ? Array<Json<U>>
      : T extends object
        ? { [K in keyof T]: Json<T[K]> }
        : T;

type Assert<T extends true> = T;

/** Panels name their data source through the `datasource` variable, never by UID. */
interface VariableDataSource<Kind extends string> {
  type: Kind;
  uid: '${datasource}';
}

/** Grafana's Prometheus query model (the fields our dashboards may use); a type, not an
 * interface, so it is assignable to Panel's Record<string, unknown> targets. */
export type PrometheusQuery = {
  refId: string;
  datasource: VariableDataSource<'prometheus'>;
  expr: string;
  legendFormat?: string;
  range?: boolean;
  instant?: boolean;
  format?: 'time_series' | 'table' | 'heatmap';
  interval?: string;
  editorMode?: 'code' | 'builder';
  exemplar?: boolean;
  hide?: boolean;
};

/** Grafana's InfluxDB query model for raw InfluxQL. */
export type InfluxQuery = {
  refId: string;
  datasource: VariableDataSource<'influxdb'>;
  query: string;
  rawQuery: true;
  resultFormat?: 'time_series' | 'table' | 'logs';
  alias?: string;
  hide?: boolean;
};

type Common = Omit<Json<Panel>, 'type' | 'options' | 'fieldConfig' | 'targets' | 'datasource'>;

type Fields<Custom> = Omit<Json<FieldConfigSource>, 'defaults'> & {
  defaults: Omit<Json<FieldConfig>, 'custom'> & { custom?: Json<Custom> };
};

type DataPanel<Kind extends string, Options, Custom, Query> = Common & {
  type: Kind;
  options: Json<Options>;
  fieldConfig: Fields<Custom>;
  datasource: Query extends PrometheusQuery
    ? VariableDataSource<'prometheus'>
    : VariableDataSource<'influxdb'>;
  targets: Query[];
};

type KnownPanel<Query> =
  | DataPanel<'timeseries', timeSeries.Options, timeSeries.FieldConfig, Query>
  | DataPanel<'stat', stat.Options, never, Query>
  | DataPanel<'bargauge', barGauge.Options, never, Query>
  | DataPanel<'table', table.Options, table.FieldConfig, Query>
  | DataPanel<'state-timeline', stateTimeline.Options, stateTimeline.FieldConfig, Query>
  | (Common & { type: 'text'; options: Json<text.Options> });

type TypedDashboard<Query> = Omit<Json<Dashboard>, 'panels'> & {
  panels: Array<KnownPanel<Query> | Json<RowPanel>>;
};

export type PrometheusDashboard = TypedDashboard<PrometheusQuery>;
export type InfluxDashboard = TypedDashboard<InfluxQuery>;
export type { Dashboard };

// The narrowed types are still Grafana's Dashboard: whatever satisfies them satisfies that.
export type PrometheusIsDashboard = Assert<PrometheusDashboard extends Json<Dashboard> ? true : false>;
export type InfluxIsDashboard = Assert<InfluxDashboard extends Json<Dashboard> ? true : false>;
export type RefIsGrafanas = Assert<VariableDataSource<'x'> extends DataSourceRef ? true : false>;
